"""Issue 34's cheap gate: does the rate at which ``auto`` settles track the tuned best rates?

``auto-adam`` (the self-tuning track's configuration: initial step 1e-3) runs for the first
20% of each task's budget on every task of the self-tuning track, 3 seeds, with four
evaluations in that window (at 5, 10, 15 and 20% of the budget), each recording ``auto``'s
scale (:func:`avggrad.current_scale`). Its settled effective rate is

.. math::

  r_\\mathrm{auto} = \\eta_0 \\cdot \\mathrm{median}\\{s_e\\},

the initial rate :math:`\\eta_0` times the median of the scales :math:`s_e` at the last
:data:`LAST_EVALS` evaluations of the window (15% and 20% of the budget) over the seeds
(6 values); ``settle`` is their max/min. Beside it, each peer's tuned best rate :math:`r^*`
under both rate rules (:func:`avggrad.protocol.best_lr`, the final-loss rule;
:func:`avggrad.protocol.fastest_lr`, AlgoPerf's) from the tracked records of ladders run on
the same task configuration: :data:`SOURCES`, pooled (Muon as ``muon-split`` where that ran).
The gate: the spread (max/min) of :math:`r^*/r_\\mathrm{auto}` across the held-out tasks, per
peer and rule; the hypothesis needs it within :data:`GATE` for some peer.

Usage::

  python -m benchmarks.auto_gate run       # the auto-adam runs (benchmarks/results/auto-gate)
  python -m benchmarks.auto_gate           # the table (and benchmarks/results/auto-gate/GATE.md)
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from avggrad import protocol
from benchmarks import run as run_lib

HERE = os.path.dirname(os.path.abspath(__file__))
TRACK = os.path.join(HERE, "grids", "selftuning.json")
GRID = os.path.join(HERE, "grids", "auto_gate.json")
FOLDER = os.path.join(run_lib.RESULTS_ROOT, "auto-gate")
FRACTION = 0.2
"""The probe's share of each task's budget."""
EVALS = 4
"""Evaluations (each recording the scale) in the probe's window."""
LAST_EVALS = 2
"""The evaluations at the end of the window that :math:`r_\\mathrm{auto}` takes."""
GATE = 3.0
"""The largest spread of :math:`r^*/r_\\mathrm{auto}` across held-out tasks that passes."""
PEERS = ("adam", "nadam", "schedule-free-adamw", "muon")
STAND_INS = {"muon": "muon-split"}
"""Muon as usually set up (hidden matrices only), where it ran."""
SOURCES = (("fine", ""), ("peers", ""), ("muon-split", ""), ("selftuning", "-tuned"),
           ("selftuning-robustness", ""))
"""Result folders (grid names) read for tuned ladders, each with the suffix its tuned labels
carry (the self-tuning track's own ``adam-tuned``; its plain labels there run at one rate)."""
SAME_TASK = ("dataset", "model", "depth", "width", "channels", "activation", "init",
             "batch_size", "steps", "schedule", "max_len", "embed_dim", "heads", "vocab_size")
"""Configuration fields on which a source's runs must match the track's task."""


def gate_grid(track: dict[str, Any]) -> dict[str, Any]:
  """The probe's grid: the track's tasks (and targets) with ``auto-adam`` alone at its
  initial rate, each budget cut to :data:`FRACTION` with :data:`EVALS` evaluations in it."""
  defaults = track.get("defaults", {})
  grid = {
      "name": "auto-gate",
      "description": ("Issue 34's gate: auto-adam (the self-tuning track's configuration) for "
                      f"the first {FRACTION:.0%} of each self-tuning task's budget, "
                      f"{EVALS} evaluations recording auto's scale; generated from "
                      "grids/selftuning.json by python -m benchmarks.auto_gate run."),
      "defaults": dict(defaults), "lrs": list(track["lrs"]),
      "seeds": list(track["seeds"]), "target_fraction": track.get("target_fraction", 0.8),
      "max_extensions": 0, "baselines": [],
      "optimizers": {"auto-adam": track["optimizers"]["auto-adam"]}, "tasks": [],
  }
  for task in track["tasks"]:
    task = {k: v for k, v in copy.deepcopy(task).items()
            if k not in ("lrs", "optimizers", "target_source")}
    steps = int(task.get("steps", defaults.get("steps")))
    window = int(round(FRACTION * steps))
    task.update(steps=window, eval_every=window // EVALS, optimizers=["auto-adam"],
                budget=steps)
    grid["tasks"].append(task)
  return grid


def write_grid(path: str = GRID) -> dict[str, Any]:
  """Writes :func:`gate_grid` of the track (its targets as recorded) to ``path``."""
  with open(TRACK) as f:
    track = json.load(f)
  run_lib.results_folder(track)  # fills a target the runner recorded (targets.json)
  grid = gate_grid(track)
  with open(path, "w") as f:
    json.dump(grid, f, indent=2)
    f.write("\n")
  return grid


def r_auto(records: Sequence[dict[str, Any]], last: int = LAST_EVALS) -> dict[str, Any]:
  """``auto``'s settled effective rate on one task from its runs (each with evaluations that
  carry ``scale``): ``{"rate", "settle", "values", "seeds"}``, the rate being the initial rate
  times the median scale at the last ``last`` evaluations after step 0 over the runs that
  did not diverge (``seeds``: how many; a diverging run's last scale says nothing of where
  ``auto`` settles).

  Example:
    >>> runs = [{"lr": 1e-3, "evals": [{"step": 0, "scale": 1.0}, {"step": 5, "scale": s},
    ...                                {"step": 10, "scale": 2 * s}]} for s in (1.0, 3.0)]
    >>> out = r_auto(runs)
    >>> round(out["rate"], 6), out["settle"]
    (0.0025, 6.0)
  """
  values, lrs = [], set()
  records = [r for r in records if r.get("status", "ok") == "ok"]
  for record in records:
    scales = [e["scale"] for e in record.get("evals", []) if e.get("step", 0) > 0
              and e.get("scale") is not None]
    values += [float(s) * float(record["lr"]) for s in scales[-last:]]
    lrs.add(float(record["lr"]))
  if not values:
    return {"rate": math.nan, "settle": math.nan, "values": [], "seeds": len(records)}
  positive = [v for v in values if v > 0]
  settle = max(positive) / min(positive) if positive else math.nan
  return {"rate": float(np.median(values)), "settle": float(settle), "values": values,
          "seeds": len(records)}


def same_task(config: dict[str, Any], task_config: dict[str, Any]) -> bool:
  """Whether a run's configuration is the track task's on every field of :data:`SAME_TASK`
  that both record (older records lack fields added since, e.g. ``heads``)."""
  return all(config[k] == task_config[k] for k in SAME_TASK
             if k in task_config and k in config)


def tuned_rates(records: Iterable[dict[str, Any]], target: Optional[float], steps: int,
                seeds: int) -> dict[str, Any]:
  """Both rate rules' picks from one optimizer's runs on one task (every rate with ``seeds``
  runs counts): ``{"final-loss": rate, "fastest": rate, "rates": n, "edge": {rule: bool}}``;
  ``fastest`` is ``None`` when no rate reaches ``target`` on every seed's median (AlgoPerf's
  rule has no pick then), both are ``None`` without a complete rate.

  Example:
    >>> run = lambda lr, losses: {"lr": lr, "losses": losses, "status": "ok"}
    >>> runs = [run(0.1, [3.0] * 10), run(0.01, [3.0] * 5 + [1.0] * 5),
    ...         run(0.001, [3.0] * 9 + [0.5])]
    >>> picks = tuned_rates(runs, target=2.0, steps=10, seeds=1)
    >>> picks["final-loss"], picks["fastest"]
    (0.001, 0.01)
  """
  by_lr: dict[float, list[dict[str, Any]]] = {}
  for r in records:
    by_lr.setdefault(float(r["lr"]), []).append(r)
  complete = {lr: rs for lr, rs in by_lr.items() if len(rs) >= seeds}
  finals = {lr: [run_lib.final_loss(r) for r in rs] for lr, rs in complete.items()}
  iters = {lr: [run_lib.record_iterations(r, target, steps) for r in rs]
           for lr, rs in complete.items()}
  picks = {"final-loss": protocol.best_lr(finals) if finals else None,
           "fastest": protocol.fastest_lr(iters, seeds=seeds) if iters else None}
  ladder = sorted(complete)
  return picks | {"rates": len(ladder),
                  "edge": {rule: rate is not None and len(ladder) > 1
                           and rate in (ladder[0], ladder[-1]) for rule, rate in picks.items()}}


def peer_runs(sources: dict[str, list[dict[str, Any]]], task: dict[str, Any],
              task_config: dict[str, Any], peer: str) -> tuple[str, list[dict[str, Any]]]:
  """A peer's runs on a task, pooled over the sources (a rate and seed counts once, from the
  first source that has it): ``(label, runs)``, the label being the stand-in
  (:data:`STAND_INS`) where any source ran it."""
  suffixes = dict(SOURCES)
  for label in ([STAND_INS[peer]] if peer in STAND_INS else []) + [peer]:
    seen: dict[tuple[float, int], dict[str, Any]] = {}
    for name, records in sources.items():
      want = label + suffixes.get(name, "")
      for r in records:
        if (r["task"] == task["name"] and r["optimizer"] == want
            and same_task(r.get("config", {}), task_config)):
          seen.setdefault((float(r["lr"]), int(r["seed"])), r)
    if seen:
      return label, list(seen.values())
  return peer, []


def spread(ratios: Iterable[float]) -> float:
  """max/min of the finite positive ratios (NaN with fewer than two).

  Example:
    >>> spread([2.0, 0.5, math.nan, 1.0])
    4.0
  """
  values = [r for r in ratios if r is not None and math.isfinite(r) and r > 0]
  return max(values) / min(values) if len(values) >= 2 else math.nan


def table(gate: dict[str, Any], auto_records: list[dict[str, Any]],
          sources: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
  """The gate's rows and spreads: per task, ``r_auto`` and per peer and rule ``r*`` and
  ``r*/r_auto``; per split, peer and rule, the spread of those ratios and the tasks where the
  peer has no tuned rate."""
  seeds = len(gate["seeds"])
  rows = []
  for task in gate["tasks"]:
    config = dict(run_lib.task_config(gate, task).__dict__)
    config["steps"] = task.get("budget", config["steps"])
    probe = r_auto([r for r in auto_records if r["task"] == task["name"]])
    row = {"task": task["name"], "split": task.get("split", ""), "auto": probe, "peers": {}}
    for peer in PEERS:
      label, runs = peer_runs(sources, task, config, peer)
      picks = tuned_rates(runs, task.get("target"), config["steps"], seeds)
      row["peers"][peer] = {"label": label, **picks, "ratio": {
          rule: (picks[rule] / probe["rate"] if picks[rule] is not None
                 and probe["rate"] > 0 else math.nan) for rule in protocol.RULES}}
    rows.append(row)
  spreads: dict[str, Any] = {}
  for split in ("development", "held-out"):
    chosen = [r for r in rows if r["split"].startswith(split)]
    for peer in PEERS:
      for rule in protocol.RULES:
        ratios = [r["peers"][peer]["ratio"][rule] for r in chosen]
        spreads[(split, peer, rule)] = {
            "spread": spread(ratios), "tasks": sum(math.isfinite(x) for x in ratios),
            "of": len(chosen),
            "missing": [r["task"] for r in chosen if not math.isfinite(r["peers"][peer]["ratio"][rule])]}
  return {"rows": rows, "spreads": spreads}


def _rate(x: Optional[float]) -> str:
  return "-" if x is None or not math.isfinite(x) else f"{x:.3g}"


def markdown(result: dict[str, Any]) -> str:
  """The gate's table as Markdown."""
  rules = protocol.RULES
  head = ["task", "split", "r_auto", "settle"] + [
      f"{p} {('AlgoPerf' if rule == 'fastest' else 'final')}" for p in PEERS for rule in rules]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for row in result["rows"]:
    cells = [row["task"], row["split"], _rate(row["auto"]["rate"]),
             "-" if not math.isfinite(row["auto"]["settle"]) else f"{row['auto']['settle']:.2f}"]
    for peer in PEERS:
      info = row["peers"][peer]
      for rule in rules:
        if info["rates"] == 0:
          cells.append("no records")
        elif info[rule] is None:
          cells.append("miss" if rule == "fastest" else "-")
        else:
          edge = " (edge)" if info["edge"][rule] else ""
          cells.append(f"{_rate(info[rule])} ({_rate(info['ratio'][rule])}x){edge}")
    lines.append("| " + " | ".join(cells) + " |")
  lines += ["", "Cells: r* (r*/r_auto). Spread of r*/r_auto (max/min) across tasks, gate "
            f"{GATE:g}x:", "", "| split | optimizer | rule | spread | tasks | no rate on |",
            "|---|---|---|---|---|---|"]
  for (split, peer, rule), s in result["spreads"].items():
    label = {r["peers"][peer]["label"] for r in result["rows"]} - {peer}
    name = peer + (f" ({', '.join(sorted(label))} where it ran)" if label else "")
    value = f"{s['spread']:.1f}x" if math.isfinite(s["spread"]) else "-"
    lines.append(f"| {split} | {name} | {rule} | {value} | {s['tasks']} of {s['of']} | "
                 f"{', '.join(s['missing']) or '-'} |")
  return "\n".join(lines) + "\n"


def verdict(result: dict[str, Any], gate: float = GATE) -> str:
  """One line: the peers and rules whose held-out spread is within ``gate``, or none."""
  passing = [f"{peer} ({rule}, {s['spread']:.1f}x over {s['tasks']} tasks)"
             for (split, peer, rule), s in result["spreads"].items()
             if split == "held-out" and math.isfinite(s["spread"]) and s["spread"] <= gate]
  if passing:
    return "The gate passes for: " + "; ".join(passing) + "."
  return (f"The gate fails: on the held-out tasks r*/r_auto spreads more than {gate:g}x for "
          "every optimizer under both rate rules (spreads over the tasks each has records "
          "on).")


def load(grid_path: str = GRID, folder: Optional[str] = None
         ) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
  """The gate's grid, its auto-adam records and the sources' records."""
  with open(grid_path) as f:
    gate = json.load(f)
  folder = folder or run_lib.results_folder(gate)
  auto_records = run_lib.read_results(os.path.join(folder, "runs.jsonl"))
  sources = {}
  for name, _ in SOURCES:
    source = run_lib.results_folder({"name": name, "tasks": []})
    sources[name] = run_lib.read_results(os.path.join(source, "runs.jsonl"))
  return gate, auto_records, sources


def main(argv: Optional[list[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("command", nargs="?", default="table", choices=["table", "run"])
  parser.add_argument("--results-dir", default=None,
                      help="the auto-adam runs' folder (default: the runner's, else "
                           "benchmarks/results/auto-gate)")
  parser.add_argument("--out", default=None, help="write the table here too (Markdown)")
  args, rest = parser.parse_known_args(argv)
  if args.command == "run":
    write_grid()
    run_lib.main([GRID] + (["--results-dir", args.results_dir] if args.results_dir else [])
                 + rest)
    return
  result = table(*load(folder=args.results_dir))
  text = markdown(result) + "\n" + verdict(result) + "\n"
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text)


if __name__ == "__main__":
  main()
