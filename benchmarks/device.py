"""One command that measures whatever accelerator JAX sees: step costs and a tuned sweep.

  PYTHONPATH=. python -m benchmarks.device [--budget 330] [--out DIR] [--quick]

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
   AdamW, Muon, the self-tuning ``auto-adam`` (its "rate" is its initial scale) and
   ``avg-muon`` (the average gradient on Muon, on Muon's fast rates only: :data:`LADDERS`),
   each on a ladder of learning rates (6 per decade) x 2 seeds in one vmapped program
   (:func:`avggrad.sweep.sweep`). The target is Adam's smoothed loss at 80% of the budget, at
   its lowest-final-loss rate. Every rate's iterations to it are kept (the per-rate table);
   each optimizer is then taken at the rate of each rate rule (:data:`avggrad.protocol.RULES`:
   AlgoPerf's ``fastest`` first, then ``final-loss``), with its iterations and seconds to the
   target (seconds = median iterations x the interleaved step time), against Adam, against
   the best peer (the fastest of :data:`BEST_PEER_OF`) and, for ``avg-muon``, against Muon.

Writes ``benchmarks/results/device/<device>.json`` and ``<device>.md`` (or into ``--out``).

Device time: the default run on one NVIDIA H200 (JAX 0.11.2) took 232 s with the five
optimizers above and ``auto-adam`` (``../shared/accelerator/h200-2026-12-04``); ``avg-muon``
on its 7 rates adds two sweeps like those of that folder's ``muon_stacking.py`` (8 sweeps of
14 runs, the step times and one step-cost size in 280 s there: about 30 s a sweep), so about
290 s in all. The budget (default 330 s) starts no sweep with less than
:data:`SWEEP_MARGIN` seconds left, or 1.25x the longest sweep so far, so the whole run,
compilation and start-up included, stays under 6 minutes; what was skipped is listed.
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
PEERS = ["adam", "avg-adam", "nadam", "schedule-free-adamw", "muon", "auto-adam", "avg-muon"]
"""The optimizers of the tuned sweep, in the order they run (``avg-muon`` last: the first one
the budget drops)."""
BEST_PEER_OF = ("adam", "nadam", "schedule-free-adamw", "muon")
"""The peers a user would pick instead of avggrad: the best peer is the fastest of them."""
LADDERS = {"avg-muon": (1e-3, 1e-2)}
"""Optimizers run on part of the ladder only, ``(lowest, highest)`` rate: ``avg-muon`` on
Muon's fast rates (Muon's fastest rate on the H200 was 2.2e-3 to 3.2e-3)."""
SWEEP_MARGIN = 40.0
"""Seconds of budget a sweep needs to start, at least (a sweep of Muon or ``avg-muon`` took
about 30 s on the H200); 1.25x the longest sweep so far when that is more."""
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


def ladder(spec: str, lrs: list[float]) -> list[float]:
  """The rates ``spec`` runs: ``lrs``, cut to its range in :data:`LADDERS`.

  Example:
    >>> ladder("avg-muon", [1e-4, 1e-3, 3e-3, 1e-2]), ladder("adam", [1e-4, 1e-3])
    ([0.001, 0.003, 0.01], [0.0001, 0.001])
  """
  low, high = LADDERS.get(spec, (-math.inf, math.inf))
  return [lr for lr in lrs if low * (1 - 1e-9) <= lr <= high * (1 + 1e-9)]


def tuned_sweep(tasks: dict[str, dict[str, Any]], budget: Budget, *, steps: int,
                lrs: list[float], seeds: list[int], save: Callable[[], None],
                out: dict[str, Any], margin: float = SWEEP_MARGIN, width: int = 128,
                batch_size: int = 128) -> None:
  """Part 2: every rate's iterations to Adam's target; each optimizer at the rate of each
  rule; iterations and seconds to the target."""
  train_data = data.load(data.EMBEDDED, "train")
  test_data = data.load(data.EMBEDDED, "test")
  longest = 0.0
  for task, fields in tasks.items():
    config = training.TrainConfig(width=width, batch_size=batch_size, steps=steps,
                                  eval_every=max(1, steps // 4), eval_examples=500, **fields)
    runs: dict[str, dict[tuple[float, int], training.RunResult]] = {}
    for spec in PEERS:
      if budget.left() < max(margin, 1.25 * longest):
        out["skipped"].append(f"sweep {task} {spec}: budget spent")
        continue
      start = time.perf_counter()
      runs[spec] = sweep.sweep(dataclasses.replace(config, optimizer=spec), ladder(spec, lrs),
                               seeds, train_data=train_data, test_data=test_data,
                               progress=False)
      seconds = time.perf_counter() - start
      out["sweep_seconds"].setdefault(task, {})[spec] = seconds
      longest = max(longest, seconds)
    if "adam" not in runs:
      continue
    step_times = timing.step_seconds(config, list(runs), train_data, number=2, repeats=3)
    out["sweeps"][task] = summarize(config, runs, step_times, lrs, seeds)
    save()


def summarize(config: training.TrainConfig, runs: dict[str, dict], step_times: dict,
              lrs: list[float], seeds: list[int]) -> dict[str, Any]:
  """The protocol's figures for one task (:mod:`avggrad.protocol`): ``per_rate`` (each
  optimizer's iterations to the target per seed at every rate it ran) and, under each rule of
  :data:`avggrad.protocol.RULES`, each optimizer at that rule's rate (``rules``)."""
  def score(r: training.RunResult) -> float:
    return protocol.score(r.losses, not r.diverged)

  def rates(res: dict) -> list[float]:
    return sorted({lr for lr, _ in res})

  target, _, _ = protocol.set_target(
      {"adam": {lr: [(runs["adam"][(lr, s)].losses, not runs["adam"][(lr, s)].diverged)
                     for s in seeds] for lr in rates(runs["adam"])}}, 0.8, config.steps)
  iters = {spec: {lr: [protocol.iterations(res[(lr, s)].losses, not res[(lr, s)].diverged,
                                           target, config.steps) for s in seeds]
                  for lr in rates(res)} for spec, res in runs.items()}
  scores = {spec: {lr: [score(res[(lr, s)]) for s in seeds] for lr in rates(res)}
            for spec, res in runs.items()}
  by_rule = {}
  for rule in protocol.RULES:
    rows = {}
    for spec, res in runs.items():
      lr = protocol.pick_lr(rule, scores[spec], iters[spec], seeds=len(seeds))
      median = avggrad.metrics.median_iterations(iters[spec][lr])
      sps = step_times[spec]["seconds_per_step"]
      rows[spec] = {"lr": lr, "edge": lr in (min(rates(res)), max(rates(res))),
                    "iterations": iters[spec][lr], "median_iterations": median,
                    "seconds_per_step": sps,
                    "seconds_to_target": protocol.seconds_to_target(median, sps),
                    "final_loss": float(np.median(scores[spec][lr]))}
    peers = [s for s in rows if s in BEST_PEER_OF]
    best_peer = min(peers, key=lambda s: (rows[s]["seconds_to_target"], s))
    for spec, row in rows.items():
      row["iterations_vs_adam"] = protocol.ratio(row["median_iterations"],
                                                 rows["adam"]["median_iterations"])
      row["wall_vs_adam"] = protocol.ratio(row["seconds_to_target"],
                                           rows["adam"]["seconds_to_target"])
      row["wall_vs_best_peer"] = protocol.ratio(row["seconds_to_target"],
                                                rows[best_peer]["seconds_to_target"])
      if spec == "avg-muon" and "muon" in rows:
        row["iterations_vs_muon"] = protocol.ratio(row["median_iterations"],
                                                   rows["muon"]["median_iterations"])
        row["wall_vs_muon"] = protocol.ratio(row["seconds_to_target"],
                                             rows["muon"]["seconds_to_target"])
    by_rule[rule] = {"best_peer": best_peer, "optimizers": rows}
  per_rate = {spec: {f"{lr:.3g}": v for lr, v in by_lr.items()} for spec, by_lr in iters.items()}
  return {"target": target, "steps": config.steps, "lrs": lrs, "seeds": seeds,
          "per_rate": per_rate, "rules": by_rule}


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
              f"{s['steps']} steps, {len(s['lrs'])} rates x {len(s['seeds'])} seeds"
              + "".join(f" ({spec}: {len(ladder(spec, s['lrs']))} rates, {lo:g} to {hi:g})"
                        for spec, (lo, hi) in LADDERS.items() if spec in s["per_rate"])
              + "; best peer = the fastest in wall-clock of " + ", ".join(BEST_PEER_OF) + ".",
              ""]
    for rule, by_rule in s["rules"].items():
      lines += [f"### {protocol.RULE_TEXT[rule][0].upper()}{protocol.RULE_TEXT[rule][1:]}", "",
                f"Best peer: {by_rule['best_peer']}.", "",
                "| optimizer | lr | iterations | vs Adam | ms/step | s to target | vs Adam "
                "| vs best peer | final loss |", "|---|---|---|---|---|---|---|---|---|"]
      for spec, r in by_rule["optimizers"].items():
        it = r["median_iterations"]
        lines.append(
            f"| {spec} | {r['lr']:.3g}{'*' if r['edge'] else ''} | "
            f"{'n.r.' if math.isinf(it) else f'{it:.0f}'} | "
            f"{_fmt(r['iterations_vs_adam'])} | {1e3 * r['seconds_per_step']:.3f} | "
            f"{_fmt(r['seconds_to_target'], 3)} | {_fmt(r['wall_vs_adam'])} | "
            f"{_fmt(r['wall_vs_best_peer'])} | {r['final_loss']:.4f} |")
      avg_muon = by_rule["optimizers"].get("avg-muon", {})
      if "wall_vs_muon" in avg_muon:
        lines += ["", f"avg-muon / Muon: iterations {_fmt(avg_muon['iterations_vs_muon'])}, "
                  f"wall-clock {_fmt(avg_muon['wall_vs_muon'])}."]
      lines.append("")
    rates = [f"{lr:.3g}" for lr in s["lrs"]]
    lines += ["### Median iterations to the target at every rate", "",
              "n.r.: the median seed missed; empty: not run; `*` above: the rule's rate at "
              "the edge of the rates run.", "",
              "| optimizer | " + " | ".join(rates) + " |", "|---|" + "---|" * len(rates)]
    for spec, by_lr in s["per_rate"].items():
      cells = [_fmt(avggrad.metrics.median_iterations(by_lr[lr]), 0) if lr in by_lr else ""
               for lr in rates]
      lines.append(f"| {spec} | " + " | ".join(cells) + " |")
    lines.append("")
  if out.get("sweep_seconds"):
    lines += ["Seconds per sweep, compilation included: " + "; ".join(
        f"{task}: " + ", ".join(f"{spec} {sec:.0f}" for spec, sec in by_spec.items())
        for task, by_spec in out["sweep_seconds"].items()) + ".", ""]
  if out["skipped"]:
    lines += ["Not measured (budget): " + "; ".join(out["skipped"]) + ".", ""]
  return "\n".join(lines)


def _fmt(value: float, digits: int = 2) -> str:
  if math.isnan(value):
    return "-"
  return "n.r." if math.isinf(value) else f"{value:.{digits}f}"


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--budget", type=float, default=330.0,
                      help="seconds in all (no sweep starts with less than SWEEP_MARGIN left)")
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
                         "quick": args.quick, "step_cost": {}, "sweeps": {},
                         "sweep_seconds": {}, "skipped": [],
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
      tuned_sweep(tasks, budget, steps=12, lrs=[1e-3, 1e-2], seeds=[0, 1], save=save,
                  out=out, margin=1.0, width=16, batch_size=16)
    else:
      lrs = [float(f"{10 ** (e / 6):.3g}") for e in range(-24, -11)]  # 1e-4 .. 1e-2
      tuned_sweep(TASKS, budget, steps=1000, lrs=lrs, seeds=[0, 1], save=save, out=out)
  save()
  print(markdown(out))
  return out


if __name__ == "__main__":
  main()
